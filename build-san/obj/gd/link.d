build-san/obj/gd/link.o: gd/link.c gd/link.h common/bus_keys.h \
 common/metrics.h common/buf.h common/buf.h common/bus.h \
 common/bus_keys.h build-san/gen/meerkat.pb-c.h common/env.h common/log.h \
 common/rchan.h common/bus.h common/util.h
gd/link.h:
common/bus_keys.h:
common/metrics.h:
common/buf.h:
common/buf.h:
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/env.h:
common/log.h:
common/rchan.h:
common/bus.h:
common/util.h:
