build-san/obj/common/bus_keys.o: common/bus_keys.c common/bus_keys.h \
 common/util.h
common/bus_keys.h:
common/util.h:
