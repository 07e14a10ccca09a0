build-san/obj/router/muc.o: router/muc.c router/muc.h \
 build-san/gen/meerkat.pb-c.h router/archive.h common/buf.h common/bus.h \
 common/bus_keys.h common/cfg.h common/env.h common/buf.h common/jid.h \
 common/log.h common/mamid.h common/cfg.h common/metrics.h \
 router/muc_state.h common/node.h common/bus.h common/metrics.h \
 common/proc.h common/rchan.h router/router.h common/store.h \
 common/util.h common/xml.h
router/muc.h:
build-san/gen/meerkat.pb-c.h:
router/archive.h:
common/buf.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/env.h:
common/buf.h:
common/jid.h:
common/log.h:
common/mamid.h:
common/cfg.h:
common/metrics.h:
router/muc_state.h:
common/node.h:
common/bus.h:
common/metrics.h:
common/proc.h:
common/rchan.h:
router/router.h:
common/store.h:
common/util.h:
common/xml.h:
