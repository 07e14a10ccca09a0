build-san/obj/pusher/main.o: pusher/main.c pusher/intake.h \
 build-san/gen/meerkat.pb-c.h pusher/pusher.h common/cfg.h common/log.h \
 common/node.h common/bus.h common/bus_keys.h common/cfg.h \
 common/metrics.h common/buf.h common/proc.h
pusher/intake.h:
build-san/gen/meerkat.pb-c.h:
pusher/pusher.h:
common/cfg.h:
common/log.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/metrics.h:
common/buf.h:
common/proc.h:
