build-san/obj/c2s/register.o: c2s/register.c c2s/authlimit.h c2s/c2s.h \
 common/buf.h common/cfg.h common/jid.h build-san/gen/meerkat.pb-c.h \
 common/metrics.h common/buf.h common/node.h common/bus.h \
 common/bus_keys.h common/cfg.h common/metrics.h common/proc.h \
 common/scram.h common/store.h common/xml.h c2s/feat.h common/log.h \
 c2s/module.h common/util.h common/workpool.h
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
c2s/feat.h:
common/log.h:
c2s/module.h:
common/util.h:
common/workpool.h:
