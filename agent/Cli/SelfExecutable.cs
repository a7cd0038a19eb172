namespace Weft.Cli;

/// <summary>
/// How to start this same <c>weft</c> program as a child (an agent per node, a workload per pod):
/// the apphost when there is one, else <c>dotnet weft.dll</c>.
/// </summary>
public static class SelfExecutable
{
    /// <summary>The file to run and the arguments that come before the command's own.</summary>
    public static (string File, string[] Prefix) Locate()
    {
        var dll = typeof(SelfExecutable).Assembly.Location;
        var dir = Path.GetDirectoryName(dll)!;
        var apphost = Path.Combine(dir, "weft");
        if (File.Exists(apphost))
        {
            return (apphost, []);
        }

        return ("dotnet", [dll]);
    }

    /// <summary>The full argument list for running <c>weft</c> with <paramref name="args"/>.</summary>
    public static (string File, string[] Args) Command(params string[] args)
    {
        var (file, prefix) = Locate();
        return (file, [.. prefix, .. args]);
    }
}
