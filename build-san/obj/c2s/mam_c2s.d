build-san/obj/c2s/mam_c2s.o: c2s/mam_c2s.c common/cfg.h c2s/feat.h \
 c2s/c2s.h common/buf.h common/jid.h build-san/gen/meerkat.pb-c.h \
 common/metrics.h common/buf.h common/node.h common/bus.h \
 common/bus_keys.h common/cfg.h common/metrics.h common/proc.h \
 common/scram.h common/store.h common/xml.h common/log.h c2s/mam_c2s.h \
 common/mamid.h c2s/module.h common/rchan.h common/rchan_set.h \
 common/rchan.h common/util.h
common/cfg.h:
c2s/feat.h:
c2s/c2s.h:
common/buf.h:
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
c2s/mam_c2s.h:
common/mamid.h:
c2s/module.h:
common/rchan.h:
common/rchan_set.h:
common/rchan.h:
common/util.h:
