/*
 * JPEG decoding through libjpeg-turbo's libjpeg API, with the settings Pillow uses (accurate
 * integer IDCT, fancy upsampling, the library's own colour-space detection), so that maskserve
 * sees exactly the pixels PIL gives torchvision. The error handling lives here, in C, because
 * libjpeg reports errors by longjmp, which must never cross a Rust frame.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "jpeglib.h"

enum {
  MS_OK = 0,
  MS_ERROR = 1,      /* libjpeg rejected the file */
  MS_TRUNCATED = 2,  /* the data ended before the last scanline */
  MS_TOO_MANY_SCANS = 3,
  MS_BAD_BUFFER = 4, /* the caller's buffer does not fit the image */
};

typedef struct {
  unsigned int width;
  unsigned int height;
  int components;
  int color_space; /* J_COLOR_SPACE of the file, as libjpeg detected it */
  int precision;
  int progressive;
  int status;
  char message[JMSG_LENGTH_MAX];
} ms_jpeg_info;

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  int too_many_scans;
} ms_error_mgr;

typedef struct {
  struct jpeg_source_mgr pub;
  int ran_out;
} ms_source_mgr;

typedef struct {
  struct jpeg_progress_mgr pub;
  int max_scans;
} ms_progress_mgr;

static const JOCTET fake_eoi[2] = {0xFF, JPEG_EOI};

static void ms_error_exit(j_common_ptr cinfo) {
  longjmp(((ms_error_mgr *)cinfo->err)->jump, 1);
}

/* Warnings (corrupt entropy data and the like) are not errors for Pillow either. */
static void ms_output_message(j_common_ptr cinfo) { (void)cinfo; }

static void ms_init_source(j_decompress_ptr cinfo) { (void)cinfo; }

static void ms_term_source(j_decompress_ptr cinfo) { (void)cinfo; }

/*
 * The whole file is in memory, so being asked for more means it ended early. Pillow's reader
 * suspends at exactly this point and, with no data left, reports a truncated file; we record
 * it and feed an EOI marker so that libjpeg winds down.
 */
static boolean ms_fill_input_buffer(j_decompress_ptr cinfo) {
  ms_source_mgr *src = (ms_source_mgr *)cinfo->src;
  src->ran_out = 1;
  src->pub.next_input_byte = fake_eoi;
  src->pub.bytes_in_buffer = 2;
  return TRUE;
}

static void ms_skip_input_data(j_decompress_ptr cinfo, long num_bytes) {
  ms_source_mgr *src = (ms_source_mgr *)cinfo->src;
  if (num_bytes <= 0) return;
  if ((size_t)num_bytes > src->pub.bytes_in_buffer) {
    ms_fill_input_buffer(cinfo);
    return;
  }
  src->pub.next_input_byte += num_bytes;
  src->pub.bytes_in_buffer -= (size_t)num_bytes;
}

/* A progressive file may hold any number of scans, each a pass over the whole image. */
static void ms_progress(j_common_ptr cinfo) {
  ms_progress_mgr *progress = (ms_progress_mgr *)cinfo->progress;
  if (cinfo->is_decompressor &&
      ((j_decompress_ptr)cinfo)->input_scan_number > progress->max_scans) {
    ((ms_error_mgr *)cinfo->err)->too_many_scans = 1;
    longjmp(((ms_error_mgr *)cinfo->err)->jump, 1);
  }
}

/*
 * Reads the header into `info`; with `out` also decodes the image into it: RGB for 1- and
 * 3-component files (gray replicated, as Pillow's L -> RGB), the stored CMYK values for
 * 4-component files (YCCK converted to CMYK by libjpeg). `out_len` must be exactly
 * width * height * (4 for 4 components, else 3). Returns info->status.
 */
int ms_jpeg_decode(const unsigned char *data, size_t len, unsigned char *out, size_t out_len,
                   int max_scans, ms_jpeg_info *info) {
  struct jpeg_decompress_struct cinfo;
  ms_error_mgr err;
  ms_source_mgr src;
  ms_progress_mgr progress;

  memset(info, 0, sizeof(*info));
  memset(&cinfo, 0, sizeof(cinfo));
  memset(&src, 0, sizeof(src));
  memset(&err, 0, sizeof(err));
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = ms_error_exit;
  err.pub.output_message = ms_output_message;
  if (setjmp(err.jump)) {
    if (err.too_many_scans) {
      info->status = MS_TOO_MANY_SCANS;
      snprintf(info->message, sizeof(info->message), "more than %d scans", max_scans);
    } else if (src.ran_out) {
      /* libjpeg's complaint about the EOI we fed it is not the news: the file is short. */
      info->status = MS_TRUNCATED;
      snprintf(info->message, sizeof(info->message), "the JPEG data ends early (truncated file)");
    } else {
      info->status = MS_ERROR;
      (*cinfo.err->format_message)((j_common_ptr)&cinfo, info->message);
    }
    jpeg_destroy_decompress(&cinfo);
    return info->status;
  }
  jpeg_create_decompress(&cinfo);
  src.pub.init_source = ms_init_source;
  src.pub.fill_input_buffer = ms_fill_input_buffer;
  src.pub.skip_input_data = ms_skip_input_data;
  src.pub.resync_to_restart = jpeg_resync_to_restart;
  src.pub.term_source = ms_term_source;
  src.pub.next_input_byte = data;
  src.pub.bytes_in_buffer = len;
  cinfo.src = &src.pub;
  memset(&progress, 0, sizeof(progress));
  progress.pub.progress_monitor = ms_progress;
  progress.max_scans = max_scans;
  cinfo.progress = &progress.pub;

  jpeg_read_header(&cinfo, TRUE);
  info->width = cinfo.image_width;
  info->height = cinfo.image_height;
  info->components = cinfo.num_components;
  info->color_space = (int)cinfo.jpeg_color_space;
  info->precision = cinfo.data_precision;
  info->progressive = cinfo.progressive_mode ? 1 : 0;
  if (src.ran_out) {
    info->status = MS_TRUNCATED;
  } else if (out != NULL) {
    size_t channels = cinfo.num_components == 4 ? 4 : 3;
    JSAMPROW row;
    cinfo.out_color_space = channels == 4 ? JCS_CMYK : JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    cinfo.do_block_smoothing = TRUE;
    if (out_len != (size_t)cinfo.image_width * cinfo.image_height * channels) {
      info->status = MS_BAD_BUFFER;
    } else {
      jpeg_start_decompress(&cinfo);
      if (cinfo.output_width != cinfo.image_width || cinfo.output_height != cinfo.image_height ||
          (size_t)cinfo.output_components != channels) {
        info->status = MS_BAD_BUFFER;
      } else {
        while (cinfo.output_scanline < cinfo.output_height) {
          row = out + (size_t)cinfo.output_scanline * cinfo.output_width * channels;
          jpeg_read_scanlines(&cinfo, &row, 1);
        }
        /* Pillow accepts a file that ends after its last scanline (no EOI, say), not before. */
        if (src.ran_out) {
          info->status = MS_TRUNCATED;
        } else {
          jpeg_finish_decompress(&cinfo);
        }
      }
    }
  }
  if (info->status == MS_TRUNCATED) {
    snprintf(info->message, sizeof(info->message), "the JPEG data ends early (truncated file)");
  } else if (info->status == MS_BAD_BUFFER) {
    snprintf(info->message, sizeof(info->message), "output buffer does not fit the image");
  }
  jpeg_destroy_decompress(&cinfo);
  return info->status;
}
