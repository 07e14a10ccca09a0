build-san/obj/common/workpool.o: common/workpool.c common/workpool.h \
 common/util.h
common/workpool.h:
common/util.h:
