namespace Weft;

/// <summary>
/// The agent's log: one line per event on stderr, "time level component: message".
/// Kept tiny on purpose; the hot path never logs per byte or per read.
/// </summary>
internal static class Log
{
    public static bool Verbose { get; set; } = Environment.GetEnvironmentVariable("WEFT_DEBUG") == "1";

    private static readonly object Gate = new();

    public static void Info(string component, string message) => Write("info", component, message);

    public static void Warn(string component, string message) => Write("warn", component, message);

    public static void Error(string component, string message) => Write("error", component, message);

    public static void Debug(string component, string message)
    {
        if (Verbose)
        {
            Write("debug", component, message);
        }
    }

    private static void Write(string level, string component, string message)
    {
        var line = $"{DateTime.UtcNow:HH:mm:ss.fff} {level} {component}: {message}";
        lock (Gate)
        {
            Console.Error.WriteLine(line);
        }
    }
}
