build-san/obj/ctl/push.o: ctl/push.c common/cfg.h ctl/ctl.h common/jid.h \
 common/store.h common/cfg.h common/util.h common/xml.h common/buf.h
common/cfg.h:
ctl/ctl.h:
common/jid.h:
common/store.h:
common/cfg.h:
common/util.h:
common/xml.h:
common/buf.h:
