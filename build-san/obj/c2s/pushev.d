build-san/obj/c2s/pushev.o: c2s/pushev.c common/buf.h c2s/c2s.h \
 common/cfg.h common/jid.h build-san/gen/meerkat.pb-c.h common/metrics.h \
 common/buf.h common/node.h common/bus.h common/bus_keys.h common/cfg.h \
 common/metrics.h common/proc.h common/scram.h common/store.h \
 common/xml.h c2s/module.h common/push_emit.h common/util.h
common/buf.h:
c2s/c2s.h:
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
c2s/module.h:
common/push_emit.h:
common/util.h:
