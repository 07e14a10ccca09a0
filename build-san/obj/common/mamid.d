build-san/obj/common/mamid.o: common/mamid.c common/mamid.h common/cfg.h \
 common/util.h
common/mamid.h:
common/cfg.h:
common/util.h:
