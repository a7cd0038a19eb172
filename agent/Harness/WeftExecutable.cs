namespace Weft.Harness;

/// <summary>
/// How to start this same `weft` build as a child process: the apphost when we are running as it
/// (`weft demo`), otherwise `dotnet weft.dll` (tests, where the host is testhost or dotnet).
/// </summary>
public static class WeftExecutable
{
    public static (string File, IReadOnlyList<string> Arguments) Command(IEnumerable<string> args)
    {
        var self = Environment.ProcessPath;
        if (self != null && Path.GetFileName(self) == "weft")
        {
            return (self, args.ToArray());
        }

        var dll = typeof(WeftExecutable).Assembly.Location;
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host
            : self != null && Path.GetFileName(self) == "dotnet" ? self
            : "dotnet";
        return (dotnet, args.Prepend(dll).ToArray());
    }
}
