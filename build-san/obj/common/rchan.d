build-san/obj/common/rchan.o: common/rchan.c common/rchan.h common/bus.h \
 common/bus_keys.h build-san/gen/meerkat.pb-c.h common/buf.h common/env.h \
 common/log.h common/util.h
common/rchan.h:
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/buf.h:
common/env.h:
common/log.h:
common/util.h:
