@echo off
rem Starts the image-captioning app on Windows: double-click this file.
rem Any arguments go on to Streamlit, for example:  run_windows.bat --server.port 8502
rem
rem What it does, in order:
rem   1. finds Python 3.10 or newer (the "py" launcher, then python, then python3);
rem   2. creates a private environment in .venv (first start only);
rem   3. installs requirements.txt into it, but only when that file changed since
rem      the last install (tools\env_check.py keeps a hash of it inside .venv);
rem      with an NVIDIA GPU (nvidia-smi lists one), first the CUDA build of PyTorch
rem      from PyTorch's own index (the default one on Windows has no CUDA), or the
rem      CPU build when that fails;
rem   4. runs "python -m ui.serve" (Streamlit's "streamlit run app.py", with the model
rem      loading in the background from the start) on 127.0.0.1 only, which opens your browser.
rem
rem Settings for special cases (normally you need none):
rem   set CAPTION_PYTHON=C:\full\path\to\python.exe   use this Python, do not search
rem   set CAPTION_NO_BROWSER=1                        do not open a browser
rem   set CAPTION_FORCE_CPU=1                         never use the GPU, no CUDA download
rem
rem Every error ends in "pause", so that a double-clicked window stays open.
rem Keep this file with CRLF line endings (.gitattributes does that for git).

setlocal EnableExtensions
title Image captioning

rem 1. Work in the folder this file is in (pushd also copes with network folders).
rem    If that fails, the checks below find no app.py and say so.
pushd "%~dp0"
if not exist app.py goto :fail_folder
if not exist requirements.txt goto :fail_folder
if not exist tools\env_check.py goto :fail_folder

rem 2. Find Python 3.10 or newer.
set "PYTHON="
if not defined CAPTION_PYTHON goto :search_python
set "CAPTION_PYTHON=%CAPTION_PYTHON:"=%"
call :try_python "%CAPTION_PYTHON%"
if not defined PYTHON goto :fail_caption_python
goto :python_found

:search_python
call :try_python py -3
if not defined PYTHON call :try_python python
if not defined PYTHON call :try_python python3
if not defined PYTHON goto :fail_no_python

:python_found
%PYTHON% tools\env_check.py check-python

rem 3. The private environment in .venv, made once.
set "VENV_PYTHON=.venv\Scripts\python.exe"
if not exist .venv goto :make_venv
"%VENV_PYTHON%" -c "import sys" >nul 2>&1 && goto :venv_ready
rem Its Python was removed or upgraded, or the folder was copied from another computer.
echo The .venv folder does not work any more; making it again.
:make_venv
echo Making a private Python environment in .venv (only on the first start) ...
%PYTHON% -m venv --clear .venv
if errorlevel 1 goto :fail_venv
:venv_ready

rem 4. Install requirements.txt when it is new or changed.
"%VENV_PYTHON%" tools\env_check.py needs-install
if errorlevel 2 goto :fail_check
if errorlevel 1 goto :packages_ready
"%VENV_PYTHON%" tools\env_check.py install-torch
if errorlevel 1 goto :fail_torch
echo Installing the packages from requirements.txt. The first time this downloads up to
echo a few gigabytes (PyTorch) and can take a while ...
"%VENV_PYTHON%" -m pip install --disable-pip-version-check -r requirements.txt
if errorlevel 1 goto :fail_install
"%VENV_PYTHON%" tools\env_check.py mark-installed
if errorlevel 1 goto :fail_check
:packages_ready

rem 5. Start the app. Arguments given to this launcher go on to Streamlit, after these.
rem    The safety settings of .streamlit\config.toml once more: they hold even where that file is not read.
set "SAFE=--server.address 127.0.0.1 --server.enableXsrfProtection true --server.maxUploadSize 200 --browser.gatherUsageStats false --server.showEmailPrompt false --client.toolbarMode minimal --client.showSidebarNavigation false"
set "HEADLESS="
if "%CAPTION_NO_BROWSER%"=="1" set "HEADLESS=--server.headless true"
echo.
echo Starting the app. Your browser opens it in a moment; if not, open the URL shown below.
echo To stop the app: press Ctrl+C in this window, or close the window.
echo.
"%VENV_PYTHON%" -m ui.serve %SAFE% %HEADLESS% %*
if errorlevel 1 goto :fail_app
exit /b 0


rem ---------------------------------------------------------------------------
rem call :try_python COMMAND [ARGS]: sets PYTHON to COMMAND if it is Python 3.10+.
:try_python
%* tools\env_check.py check-python >nul 2>&1
if errorlevel 1 exit /b 1
set "PYTHON=%*"
exit /b 0


rem ---------------------------------------------------------------------------
rem Errors: say what went wrong in plain words, wait for a key, then stop.
:fail_folder
echo.
echo ERROR: app.py, requirements.txt or tools\env_check.py is missing next to this
echo        launcher (in "%CD%"). Keep run_windows.bat in the app's folder,
echo        or download the app again.
echo.
pause
exit /b 1

:fail_caption_python
echo.
echo ERROR: CAPTION_PYTHON is set to "%CAPTION_PYTHON%",
echo        but that cannot be run or is older than Python 3.10.
echo        Set it to the full path of python.exe 3.10 or newer, or remove it:
echo          set CAPTION_PYTHON=
echo.
pause
exit /b 1

:fail_no_python
echo.
echo ERROR: Python 3.10 or newer was not found on this computer.
echo        Install it from https://www.python.org/downloads/ and tick
echo        "Add python.exe to PATH" in the installer, then double-click
echo        run_windows.bat again.
echo        Already installed somewhere else? In a Command Prompt, run
echo          set CAPTION_PYTHON=C:\full\path\to\python.exe
echo          run_windows.bat
echo.
pause
exit /b 1

:fail_venv
if exist .venv rmdir /s /q .venv
echo.
echo ERROR: Could not create the .venv folder with %PYTHON%.
echo        Check that this folder is not read-only (not inside "Program Files",
echo        not a read-only network drive) and that the disk is not full.
echo.
pause
exit /b 1

:fail_check
echo.
echo ERROR: Could not check whether the packages are installed
echo        (tools\env_check.py failed; its message is above).
echo.
pause
exit /b 1

:fail_torch
echo.
echo ERROR: Could not prepare the PyTorch install
echo        (tools\env_check.py failed; its message is above).
echo.
pause
exit /b 1

:fail_install
echo.
echo ERROR: Installing the packages failed; pip's messages above say why.
echo        Check the internet connection and double-click run_windows.bat again;
echo        it goes on where it stopped. If it keeps failing, delete the .venv
echo        folder and try once more.
echo.
pause
exit /b 1

:fail_app
echo.
echo ERROR: The app stopped with an error; the messages above say why.
echo.
pause
exit /b 1
