build-san/obj/pusher/intake.o: pusher/intake.c pusher/intake.h \
 build-san/gen/meerkat.pb-c.h pusher/pusher.h common/cfg.h \
 pusher/backoff.h common/env.h common/buf.h common/log.h common/metrics.h \
 common/node.h common/bus.h common/bus_keys.h common/cfg.h \
 common/metrics.h common/proc.h common/push_emit.h common/rchan.h \
 common/util.h pusher/window.h
pusher/intake.h:
build-san/gen/meerkat.pb-c.h:
pusher/pusher.h:
common/cfg.h:
pusher/backoff.h:
common/env.h:
common/buf.h:
common/log.h:
common/metrics.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
common/push_emit.h:
common/rchan.h:
common/util.h:
pusher/window.h:
