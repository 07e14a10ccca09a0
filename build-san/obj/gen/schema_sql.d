build-san/obj/gen/schema_sql.o: build-san/gen/schema_sql.c
