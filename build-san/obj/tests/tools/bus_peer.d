build-san/obj/tests/tools/bus_peer.o: tests/tools/bus_peer.c common/bus.h \
 common/bus_keys.h build-san/gen/meerkat.pb-c.h common/env.h common/buf.h \
 common/log.h common/rchan.h common/bus.h common/util.h
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/env.h:
common/buf.h:
common/log.h:
common/rchan.h:
common/bus.h:
common/util.h:
