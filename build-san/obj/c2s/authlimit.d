build-san/obj/c2s/authlimit.o: c2s/authlimit.c c2s/authlimit.h \
 common/util.h
c2s/authlimit.h:
common/util.h:
