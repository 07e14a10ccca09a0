build-san/obj/ctl/admin.o: ctl/admin.c common/buf.h common/cfg.h \
 ctl/ctl.h common/util.h
common/buf.h:
common/cfg.h:
ctl/ctl.h:
common/util.h:
