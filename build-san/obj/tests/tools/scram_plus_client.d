build-san/obj/tests/tools/scram_plus_client.o: \
 tests/tools/scram_plus_client.c common/scram.h
common/scram.h:
