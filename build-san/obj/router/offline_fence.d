build-san/obj/router/offline_fence.o: router/offline_fence.c common/log.h \
 common/node.h common/bus.h common/bus_keys.h \
 build-san/gen/meerkat.pb-c.h common/cfg.h common/metrics.h common/buf.h \
 common/proc.h router/offline_fence.h common/rchan.h common/rchan_set.h \
 common/rchan.h router/router.h common/buf.h common/util.h
common/log.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/cfg.h:
common/metrics.h:
common/buf.h:
common/proc.h:
router/offline_fence.h:
common/rchan.h:
common/rchan_set.h:
common/rchan.h:
router/router.h:
common/buf.h:
common/util.h:
