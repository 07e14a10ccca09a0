build-san/obj/router/intake.o: router/intake.c router/intake.h \
 build-san/gen/meerkat.pb-c.h common/bus.h common/bus_keys.h common/cfg.h \
 common/env.h common/buf.h common/log.h common/metrics.h common/node.h \
 common/bus.h common/cfg.h common/metrics.h common/proc.h common/rchan.h \
 router/router.h common/buf.h common/util.h
router/intake.h:
build-san/gen/meerkat.pb-c.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/env.h:
common/buf.h:
common/log.h:
common/metrics.h:
common/node.h:
common/bus.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
common/rchan.h:
router/router.h:
common/buf.h:
common/util.h:
