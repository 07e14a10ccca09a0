build-san/obj/common/push_emit.o: common/push_emit.c common/push_emit.h \
 build-san/gen/meerkat.pb-c.h common/cfg.h common/log.h common/metrics.h \
 common/buf.h common/node.h common/bus.h common/bus_keys.h common/proc.h \
 common/rchan.h common/rchan_set.h common/util.h
common/push_emit.h:
build-san/gen/meerkat.pb-c.h:
common/cfg.h:
common/log.h:
common/metrics.h:
common/buf.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/proc.h:
common/rchan.h:
common/rchan_set.h:
common/util.h:
