build-san/obj/ctl/main.o: ctl/main.c ctl/ctl.h
ctl/ctl.h:
