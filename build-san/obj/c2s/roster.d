build-san/obj/c2s/roster.o: c2s/roster.c c2s/c2s.h common/buf.h \
 common/cfg.h common/jid.h build-san/gen/meerkat.pb-c.h common/metrics.h \
 common/buf.h common/node.h common/bus.h common/bus_keys.h common/cfg.h \
 common/metrics.h common/proc.h common/scram.h common/store.h \
 common/xml.h c2s/feat.h common/log.h c2s/module.h common/util.h
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
c2s/feat.h:
common/log.h:
c2s/module.h:
common/util.h:
