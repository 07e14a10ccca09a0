build-san/obj/router/main.o: router/main.c common/env.h common/buf.h \
 build-san/gen/meerkat.pb-c.h common/log.h common/metrics.h common/node.h \
 common/bus.h common/bus_keys.h common/cfg.h common/metrics.h \
 common/proc.h router/archive.h common/buf.h router/custody.h \
 router/intake.h router/muc.h router/offline_fence.h common/push_emit.h \
 common/rchan.h common/rchan_set.h common/rchan.h router/router.h \
 common/util.h
common/env.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/log.h:
common/metrics.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
router/archive.h:
common/buf.h:
router/custody.h:
router/intake.h:
router/muc.h:
router/offline_fence.h:
common/push_emit.h:
common/rchan.h:
common/rchan_set.h:
common/rchan.h:
router/router.h:
common/util.h:
