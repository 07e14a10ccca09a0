build-san/obj/common/scram.o: common/scram.c common/scram.h common/util.h
common/scram.h:
common/util.h:
