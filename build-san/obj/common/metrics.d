build-san/obj/common/metrics.o: common/metrics.c common/metrics.h \
 common/buf.h common/log.h common/util.h
common/metrics.h:
common/buf.h:
common/log.h:
common/util.h:
