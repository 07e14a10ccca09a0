build-san/obj/router/fanout.o: router/fanout.c common/cfg.h \
 router/custody.h build-san/gen/meerkat.pb-c.h common/env.h common/buf.h \
 common/jid.h common/metrics.h common/node.h common/bus.h \
 common/bus_keys.h common/cfg.h common/metrics.h common/proc.h \
 router/router.h common/buf.h common/util.h
common/cfg.h:
router/custody.h:
build-san/gen/meerkat.pb-c.h:
common/env.h:
common/buf.h:
common/jid.h:
common/metrics.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
router/router.h:
common/buf.h:
common/util.h:
