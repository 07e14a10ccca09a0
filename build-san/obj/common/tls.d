build-san/obj/common/tls.o: common/tls.c common/tls.h common/util.h
common/tls.h:
common/util.h:
