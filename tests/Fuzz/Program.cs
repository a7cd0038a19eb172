using SharpFuzz;
using Weft.Fuzz;

// weft-fuzz TARGET            under afl-fuzz: the fork server loop; alone: one input from stdin
// weft-fuzz TARGET FILE...    replays files (a crash found by AFL++, a corpus) and says which failed
// weft-fuzz seeds DIR         writes every target's seed corpus into DIR/TARGET/
if (args.Length == 0 || args[0] is "-h" or "--help")
{
    Console.WriteLine("usage: weft-fuzz TARGET [FILE...] | weft-fuzz seeds DIR\ntargets:");
    foreach (var t in FuzzTargets.All)
    {
        Console.WriteLine($"  {t.Name,-16} {t.Description}");
    }

    return args.Length == 0 ? 2 : 0;
}

if (args[0] == "seeds" && args.Length == 2)
{
    foreach (var t in FuzzTargets.All)
    {
        var dir = Path.Combine(args[1], t.Name);
        Directory.CreateDirectory(dir);
        foreach (var (name, content) in t.Seeds())
        {
            File.WriteAllBytes(Path.Combine(dir, name), content);
        }
    }

    return 0;
}

var target = FuzzTargets.Find(args[0]);
if (target is null)
{
    Console.Error.WriteLine($"weft-fuzz: unknown target '{args[0]}' (weft-fuzz --help lists them)");
    return 2;
}

if (args.Length > 1)
{
    var failed = 0;
    foreach (var file in args[1..])
    {
        try
        {
            target.Run(File.ReadAllBytes(file));
        }
        catch (Exception e)
        {
            failed++;
            Console.Error.WriteLine($"{file}: {e}");
        }
    }

    Console.WriteLine($"{args.Length - 1 - failed} passed, {failed} failed");
    return failed == 0 ? 0 : 1;
}

// The agent logs to stderr; under the fuzzer that is noise at millions of executions.
Console.SetError(TextWriter.Null);

// Instrumented code records coverage in SharpFuzz's map, which only Fuzzer.Run attaches; the preparation runs
// before it into a scratch map of its own (AFL's map is 64 KiB).
unsafe
{
    SharpFuzz.Common.Trace.SharedMem = (byte*)System.Runtime.InteropServices.NativeMemory.AllocZeroed(1 << 16);
}

target.Prepare();
Fuzzer.OutOfProcess.Run(stream =>
{
    using var buffer = new MemoryStream();
    stream.CopyTo(buffer);
    target.Run(buffer.GetBuffer().AsSpan(0, (int)buffer.Length));
});
return 0;
