build-san/obj/mam/archive.o: mam/archive.c mam/archive.h common/buf.h \
 build-san/gen/meerkat.pb-c.h common/xml.h common/buf.h common/cfg.h \
 mam/fence.h common/log.h common/mamid.h common/cfg.h common/metrics.h \
 common/node.h common/bus.h common/bus_keys.h common/metrics.h \
 common/proc.h common/rchan.h common/store.h common/util.h
mam/archive.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/xml.h:
common/buf.h:
common/cfg.h:
mam/fence.h:
common/log.h:
common/mamid.h:
common/cfg.h:
common/metrics.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/metrics.h:
common/proc.h:
common/rchan.h:
common/store.h:
common/util.h:
