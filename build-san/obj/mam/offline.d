build-san/obj/mam/offline.o: mam/offline.c common/cfg.h common/log.h \
 mam/mam.h common/buf.h build-san/gen/meerkat.pb-c.h common/metrics.h \
 common/buf.h common/node.h common/bus.h common/bus_keys.h common/cfg.h \
 common/metrics.h common/proc.h common/rchan.h common/store.h \
 common/util.h common/xml.h
common/cfg.h:
common/log.h:
mam/mam.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/metrics.h:
common/buf.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
common/rchan.h:
common/store.h:
common/util.h:
common/xml.h:
