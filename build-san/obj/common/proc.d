build-san/obj/common/proc.o: common/proc.c common/proc.h common/log.h \
 common/util.h
common/proc.h:
common/log.h:
common/util.h:
