build-san/obj/common/store_pgsql.o: common/store_pgsql.c \
 /usr/include/postgresql/libpq-fe.h \
 /usr/include/postgresql/postgres_ext.h \
 /usr/include/postgresql/pg_config_ext.h common/buf.h common/log.h \
 common/store_impl.h common/cfg.h common/store.h common/util.h
/usr/include/postgresql/libpq-fe.h:
/usr/include/postgresql/postgres_ext.h:
/usr/include/postgresql/pg_config_ext.h:
common/buf.h:
common/log.h:
common/store_impl.h:
common/cfg.h:
common/store.h:
common/util.h:
