build-san/obj/router/gd.o: router/gd.c common/cfg.h common/jid.h \
 common/log.h common/mamid.h common/cfg.h common/metrics.h common/buf.h \
 common/node.h common/bus.h common/bus_keys.h \
 build-san/gen/meerkat.pb-c.h common/metrics.h common/proc.h \
 common/rchan.h common/rchan_set.h common/rchan.h router/router.h \
 common/buf.h common/util.h
common/cfg.h:
common/jid.h:
common/log.h:
common/mamid.h:
common/cfg.h:
common/metrics.h:
common/buf.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/metrics.h:
common/proc.h:
common/rchan.h:
common/rchan_set.h:
common/rchan.h:
router/router.h:
common/buf.h:
common/util.h:
