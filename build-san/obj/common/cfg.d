build-san/obj/common/cfg.o: common/cfg.c common/cfg.h common/util.h
common/cfg.h:
common/util.h:
