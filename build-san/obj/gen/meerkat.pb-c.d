build-san/obj/gen/meerkat.pb-c.o: build-san/gen/meerkat.pb-c.c \
 build-san/gen/meerkat.pb-c.h
build-san/gen/meerkat.pb-c.h:
