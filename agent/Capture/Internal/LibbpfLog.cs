using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace Weft.Capture.Internal;

/// <summary>
/// Routes libbpf's messages (verifier logs included) into .NET. While a <see cref="Collect"/> scope is
/// open on a thread, every message libbpf prints on that thread is kept, so a failed load can put the
/// tail of the verifier log into its <see cref="CaptureException"/>.
/// </summary>
internal static unsafe partial class LibbpfLog
{
    private const int LevelWarn = 0;
    private const int LevelDebug = 2;

    private static int _installed;

    [ThreadStatic]
    private static StringBuilder? _collected;

    /// <summary>Installs the print callback once per process.</summary>
    internal static void Install()
    {
        if (Interlocked.Exchange(ref _installed, 1) == 0)
        {
            Libbpf.SetPrint(&Print);
        }
    }

    internal static Scope Collect() => new();

    internal readonly struct Scope : IDisposable
    {
        public Scope() => _collected = new StringBuilder();

        /// <summary>The last <paramref name="maxChars"/> characters libbpf printed in this scope.</summary>
        public string Tail(int maxChars)
        {
            var text = _collected?.ToString().TrimEnd() ?? "";
            return text.Length <= maxChars ? text : "..." + text[^maxChars..];
        }

        public void Dispose() => _collected = null;
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static int Print(int level, byte* format, nint args)
    {
        try
        {
            var message = Format(format, args);
            if (level < LevelDebug)
            {
                _collected?.Append(message);
            }
            if (level == LevelWarn)
            {
                Log.Debug("capture", "libbpf: " + message.TrimEnd());
            }
            return message.Length;
        }
        catch
        {
            // an exception must never unwind into libbpf's C frames
            return 0;
        }
    }

    private static string Format(byte* format, nint args)
    {
        if (RuntimeInformation.ProcessArchitecture == Architecture.X64)
        {
            // x86-64 SysV: va_list is an array of one 24-byte struct, so the callback receives a
            // pointer to it and a byte copy is exactly va_copy. Measure with the copy, format with the
            // original: the verifier log can be long and its tail is what explains a rejection.
            byte* copy = stackalloc byte[24];
            Buffer.MemoryCopy((void*)args, copy, 24, 24);
            var length = vsnprintf(null, 0, format, (nint)copy);
            if (length <= 0)
            {
                return "";
            }
            var buffer = new byte[length + 1];
            fixed (byte* b = buffer)
            {
                vsnprintf(b, (nuint)buffer.Length, format, args);
            }
            return Encoding.UTF8.GetString(buffer, 0, length);
        }

        // elsewhere a va_list cannot be copied from here: format once into a bounded buffer
        var bounded = new byte[64 * 1024];
        fixed (byte* b = bounded)
        {
            var length = Math.Min(vsnprintf(b, (nuint)bounded.Length, format, args), bounded.Length - 1);
            return length <= 0 ? "" : Encoding.UTF8.GetString(bounded, 0, length);
        }
    }

    [LibraryImport("libc", EntryPoint = "vsnprintf")]
    private static partial int vsnprintf(byte* buffer, nuint size, byte* format, nint args);
}
