build-san/obj/c2s/stream.o: c2s/stream.c c2s/authlimit.h c2s/c2s.h \
 common/buf.h common/cfg.h common/jid.h build-san/gen/meerkat.pb-c.h \
 common/metrics.h common/buf.h common/node.h common/bus.h \
 common/bus_keys.h common/cfg.h common/metrics.h common/proc.h \
 common/scram.h common/store.h common/xml.h common/log.h c2s/module.h \
 c2s/sm.h common/tls.h common/util.h common/workpool.h
c2s/authlimit.h:
c2s/c2s.h:
common/buf.h:
common/cfg.h:
common/jid.h:
build-san/gen/meerkat.pb-c.h:
common/metrics.h:
common/buf.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
common/scram.h:
common/store.h:
common/xml.h:
common/log.h:
c2s/module.h:
c2s/sm.h:
common/tls.h:
common/util.h:
common/workpool.h:
