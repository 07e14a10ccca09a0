build-san/obj/router/carbons.o: router/carbons.c common/cfg.h \
 common/log.h common/metrics.h common/buf.h common/node.h common/bus.h \
 common/bus_keys.h build-san/gen/meerkat.pb-c.h common/cfg.h \
 common/metrics.h common/proc.h router/router.h common/buf.h \
 common/util.h
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
router/router.h:
common/buf.h:
common/util.h:
