// Minimal LiteRT image classifier for a model exported by `keras-eigenconv export`.
// Works for float32 / float16 / dynamic exports (float32 I/O) and int8 exports (int8 I/O).
// Input: NHWC [1, H, W, 3], RGB, pixels scaled to [0, 1] (change `normalize` to match your
// training preprocessing). Output: [1, classes] scores.
package com.example.eigenconv

import android.content.Context
import android.graphics.Bitmap
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import kotlin.math.roundToInt

class ImageClassifier(context: Context, assetName: String, numThreads: Int = 2) : AutoCloseable {
    private val interpreter: Interpreter
    private val height: Int
    private val width: Int
    private val channels: Int
    private val inputType: DataType
    private val outputType: DataType
    private val numClasses: Int

    init {
        val options = Interpreter.Options().apply {
            setNumThreads(numThreads)
            setUseXNNPACK(true)
        }
        interpreter = Interpreter(loadModel(context, assetName), options)
        val input = interpreter.getInputTensor(0)
        val shape = input.shape()              // [1, H, W, C]
        height = shape[1]; width = shape[2]; channels = shape[3]
        inputType = input.dataType()           // FLOAT32, or INT8 for --quantize int8
        val output = interpreter.getOutputTensor(0)
        outputType = output.dataType()
        numClasses = output.shape().last()
    }

    /** Pixel value (0..255) to the model's input scale; [0, 1] here. */
    private fun normalize(v: Int): Float = v / 255f

    fun classify(bitmap: Bitmap): FloatArray {
        val scaled = Bitmap.createScaledBitmap(bitmap, width, height, true)
        val pixels = IntArray(width * height)
        scaled.getPixels(pixels, 0, width, 0, 0, width, height)
        val bytesPerValue = if (inputType == DataType.FLOAT32) 4 else 1
        val input = ByteBuffer.allocateDirect(height * width * channels * bytesPerValue)
            .order(ByteOrder.nativeOrder())
        val q = interpreter.getInputTensor(0).quantizationParams()
        for (p in pixels) {                   // row-major, channels innermost (NHWC)
            val rgb = floatArrayOf(
                normalize((p shr 16) and 0xFF), normalize((p shr 8) and 0xFF), normalize(p and 0xFF)
            )
            for (c in 0 until channels) {
                val real = rgb[c % 3]
                if (inputType == DataType.FLOAT32) {
                    input.putFloat(real)
                } else {                      // int8: q = round(real / scale) + zero_point
                    val v = (real / q.scale).roundToInt() + q.zeroPoint
                    input.put(v.coerceIn(-128, 127).toByte())
                }
            }
        }
        input.rewind()
        return if (outputType == DataType.FLOAT32) {
            val out = Array(1) { FloatArray(numClasses) }
            interpreter.run(input, out)
            out[0]
        } else {                              // int8: real = scale * (q - zero_point)
            val out = Array(1) { ByteArray(numClasses) }
            interpreter.run(input, out)
            val oq = interpreter.getOutputTensor(0).quantizationParams()
            FloatArray(numClasses) { oq.scale * (out[0][it] - oq.zeroPoint) }
        }
    }

    override fun close() = interpreter.close()

    private fun loadModel(context: Context, name: String): MappedByteBuffer {
        context.assets.openFd(name).use { fd ->
            FileInputStream(fd.fileDescriptor).channel.use { ch ->
                return ch.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
            }
        }
    }
}
