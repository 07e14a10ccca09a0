build-san/obj/tests/tools/bus_inject.o: tests/tools/bus_inject.c \
 common/bus.h common/bus_keys.h build-san/gen/meerkat.pb-c.h common/cfg.h \
 common/env.h common/buf.h common/util.h
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/cfg.h:
common/env.h:
common/buf.h:
common/util.h:
