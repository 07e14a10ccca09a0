build-san/obj/router/archive.o: router/archive.c router/archive.h \
 common/buf.h build-san/gen/meerkat.pb-c.h common/cfg.h common/log.h \
 common/mamid.h common/cfg.h common/metrics.h common/buf.h common/node.h \
 common/bus.h common/bus_keys.h common/metrics.h common/proc.h \
 common/rchan.h common/rchan_set.h common/rchan.h common/util.h \
 common/xml.h
router/archive.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/cfg.h:
common/log.h:
common/mamid.h:
common/cfg.h:
common/metrics.h:
common/buf.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/metrics.h:
common/proc.h:
common/rchan.h:
common/rchan_set.h:
common/rchan.h:
common/util.h:
common/xml.h:
