build-san/obj/ctl/top.o: ctl/top.c common/buf.h common/cfg.h ctl/ctl.h \
 common/util.h
common/buf.h:
common/cfg.h:
ctl/ctl.h:
common/util.h:
