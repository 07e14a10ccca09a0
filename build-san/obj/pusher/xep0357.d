build-san/obj/pusher/xep0357.o: pusher/xep0357.c common/buf.h \
 common/cfg.h common/log.h common/metrics.h common/buf.h common/node.h \
 common/bus.h common/bus_keys.h build-san/gen/meerkat.pb-c.h common/cfg.h \
 common/metrics.h common/proc.h pusher/pusher.h common/store.h \
 common/util.h pusher/xep0357_wire.h
common/buf.h:
common/cfg.h:
common/log.h:
common/metrics.h:
common/buf.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
pusher/pusher.h:
common/store.h:
common/util.h:
pusher/xep0357_wire.h:
