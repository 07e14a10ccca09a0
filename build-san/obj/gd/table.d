build-san/obj/gd/table.o: gd/table.c gd/table.h common/metrics.h \
 common/buf.h common/log.h common/util.h
gd/table.h:
common/metrics.h:
common/buf.h:
common/log.h:
common/util.h:
