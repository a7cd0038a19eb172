using Weft.Tests.Proxy;

namespace Weft.Tests;

/// <summary>
/// The test assembly's own entry point, which the test runner does not use: <c>dotnet Weft.Tests.dll COMMAND</c> runs a
/// measurement that needs a process of its own (<see cref="HeldConnectionMemory"/>).
/// </summary>
internal static class Program
{
    public static async Task<int> Main(string[] args)
    {
        if (args is [HeldConnectionMemory.Command, var destination])
        {
            return await HeldConnectionMemory.MainAsync(destination);
        }

        await Console.Error.WriteLineAsync($"usage: dotnet Weft.Tests.dll {HeldConnectionMemory.Command} {HeldConnectionMemory.Meshed}|{HeldConnectionMemory.Outside}");
        return 2;
    }
}
