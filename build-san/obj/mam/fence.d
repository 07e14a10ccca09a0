build-san/obj/mam/fence.o: mam/fence.c mam/fence.h common/util.h
mam/fence.h:
common/util.h:
