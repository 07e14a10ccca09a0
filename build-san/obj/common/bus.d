build-san/obj/common/bus.o: common/bus.c common/bus.h common/bus_keys.h \
 build-san/gen/meerkat.pb-c.h common/buf.h common/env.h common/log.h \
 common/util.h
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/buf.h:
common/env.h:
common/log.h:
common/util.h:
