build-san/obj/tests/bench/loadgen.o: tests/bench/loadgen.c common/buf.h \
 common/scram.h common/util.h
common/buf.h:
common/scram.h:
common/util.h:
