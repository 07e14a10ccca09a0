build-san/obj/ctl/reload.o: ctl/reload.c common/buf.h common/cfg.h \
 ctl/ctl.h common/util.h
common/buf.h:
common/cfg.h:
ctl/ctl.h:
common/util.h:
