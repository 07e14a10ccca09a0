build-san/obj/c2s/csi_part.o: c2s/csi_part.c c2s/csi_part.h common/buf.h
c2s/csi_part.h:
common/buf.h:
