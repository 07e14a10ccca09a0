build-san/obj/ctl/supervise.o: ctl/supervise.c common/bus_keys.h \
 common/cfg.h ctl/ctl.h common/log.h common/proc.h common/tls.h \
 common/util.h
common/bus_keys.h:
common/cfg.h:
ctl/ctl.h:
common/log.h:
common/proc.h:
common/tls.h:
common/util.h:
